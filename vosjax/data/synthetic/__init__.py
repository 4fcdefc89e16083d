"""The embedded default dataset: procedural videos with exact multi-object masks.

generator (configs, `generate_video`), scene (rendering), textures, tfds_builder
(`vosjax_synthetic`), export (DAVIS-2017 layout on disk).
"""
