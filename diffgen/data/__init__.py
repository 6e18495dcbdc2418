"""Data: the toy distributions and the image datasets (datasets), their official file formats (formats), checked
local copies (downloads) and fixture files in those formats (fixtures). Imports from base only."""
