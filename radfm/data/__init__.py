"""Data: the MedMD manifest, image readers, transforms, prompts, MedMD-synth, importers, the datamodule."""
