"""The served model's code (MLflow models-from-code): :func:`radfm.registry.pyfunc.log_pyfunc` logs this file,
and MLflow runs it when it logs and when it loads the model, with the radfm copied into the model (``code/``)
first on ``sys.path``. It only sets the model; nothing in radfm imports it.
"""

from __future__ import annotations

import mlflow

from radfm.registry.pyfunc import RadFMPyfunc

mlflow.models.set_model(RadFMPyfunc())
