"""The plain-autograd engine: Jacobians, products and forward mode computed
from eager forward passes and ``torch.autograd`` backward passes, the loop
``vmap`` and the walks over recorded graphs.
"""
