"""Reading PyTorch checkpoints into our variables: the file reader (torch_file.py), ImageNet ResNets (resnet.py)."""
