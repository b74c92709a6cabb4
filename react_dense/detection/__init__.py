"""Open-vocabulary detection: the config, config → parts, COCO/LVIS data, LVIS-rule evaluation, drawing."""
