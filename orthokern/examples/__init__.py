"""Runnable examples: ``python -m orthokern.examples.digits`` (SGDM vs Orthogonal-SGDM on scikit-learn's digits).

They need the extras ``scikit-learn``, ``matplotlib`` and ``tqdm``; the package itself does not.
"""
