"""Using a trained model in one process: the libraries behind `alexserve eval` and `alexserve predict`.

    saved_model   `load_model`: an exported file or a checkpoint -> `AlexNetGrouped` on a device
    error_rates   `measure_error_rates`: top-1/top-5 error on a prepared tree, centre crop and ten crops
    predict       `predict_files`: the top-k classes of raw images on the paper's ten-crop test-time path

(The validation pass inside training is `alexserve.train.evaluation`; both use its `evaluate`.)
"""
