"""What the chapters run: the registry of chapter notebooks and presets, each chapter's plan (data, nets,
training), the generators whose samples are measured, each chapter's measurements (mutual_information, trained_gap,
new_objective, and the training_curves of chapters 3 and 4), its figures, tables and widgets. Imports from every
folder below: base, data, diffusion, measures."""
