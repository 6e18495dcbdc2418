"""What the chapters run: the registry of chapter notebooks and presets, each chapter's plan (data, nets, training),
the generators whose samples are measured, each chapter's measurements (mutual_information, trained_gap, curves,
new_objective), its figures, tables and widgets. Imports from every folder below: base, data, diffusion, measures."""
