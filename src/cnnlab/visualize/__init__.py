"""Pictures of what a trained network learned, for cnnlab-explain: conv filters, feature maps, Grad-CAM
overlays and the most confidently wrong test images. Each module draws one kind of picture as a matplotlib
Figure; figures.py holds what they share (grids of panels, de-normalising images, writing the PNG)."""
