"""Group level: study template, voxelwise inference, region statistics."""
