"""Programs around training: predict, prepare (datasets), convert_resnet (ImageNet backbones)."""
