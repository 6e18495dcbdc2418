"""What the book measures on samples: copy rates, nearest neighbours and intervals (metrics), the mutual
information I(z; S) (mi), sample quality (quality, fid). Imports from base, data and diffusion."""
