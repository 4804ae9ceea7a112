"""MONAI training pipelines for radcloud's models. Filled by issue #4."""
