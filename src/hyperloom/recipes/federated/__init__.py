"""The ``federated`` recipe: pFedHN against FedAvg, FedAvg + fine-tuning and local training.

``recipe`` holds the configuration and the in-process round loop (``hyperloom train
federated``); ``flower_app`` holds the same algorithms as Flower apps (a ``Strategy`` on
Flower's message API, a ``ClientApp`` and a ``ServerApp``) and needs the ``fl`` extra. Nothing
is imported here, so that the recipe runs without Flower installed.
"""
