"""Hyper-parameter search: an Optuna study whose trials are ordinary cnnlab training runs (`cnnlab-tune`)."""
