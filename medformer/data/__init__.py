"""Data: MedMNIST, DICOM, synthetic and derived datasets, transforms, batches and loaders."""

from . import derived  # noqa: F401  (registers the derived segmentation/regression tasks)
