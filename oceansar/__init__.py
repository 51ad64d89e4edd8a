"""The library under the stage scripts: one module per concept (README, "Layout").

The stage scripts at the top of the repository (prepare, pretrain, prune, evaluate, study) import these
modules; the modules never import a stage script.
"""
