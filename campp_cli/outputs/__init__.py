"""What a run writes: the files of each image, the report."""
