"""Transfer-learning image classifier for SageMaker: training, serving and the facts they share."""
