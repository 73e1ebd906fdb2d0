"""rtq.data: the COCO evaluation set and calibration image folders."""

from rtq.data.calib import CalibrationImages, calibration_batches
from rtq.data.coco import CocoDataset, CocoImage

__all__ = ["CalibrationImages", "CocoDataset", "CocoImage", "calibration_batches"]
