"""Analysis: metrics against ground truth, evaluation reports and uncertainty calibration fits."""
