"""Blind side-by-side human ratings: pairing raters with answers, and the ratings math.

Pure Python and the standard library: the API process serves these and numpy is not one of its
dependencies (see :mod:`app.ratings.bradley_terry` for why the fit is hand-written).
"""
