"""The lab book: the lessons of the CNN course as one-command experiments with recorded pages (cnnlab-lab)."""
