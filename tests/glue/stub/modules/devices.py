import torch

cpu = torch.device("cpu")
device = cpu
