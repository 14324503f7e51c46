"""MLflow "model from code" entry: declares the lab's pyfunc wrapper (see pyfunc.py)."""

import mlflow.models

from feq_lab.tracking.pyfunc import PickerPyfunc

mlflow.models.set_model(PickerPyfunc())
