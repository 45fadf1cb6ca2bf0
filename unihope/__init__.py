"""UniHOPE data generation: sources, grasp labels, rendered occlusion, de-occlusion, packing, training."""

__version__ = "0.1.0"
