"""fracture-train: fine-tune and evaluate a fracture classifier on a curated split manifest."""
