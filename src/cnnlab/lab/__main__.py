from cnnlab.lab.cli import main

main()
