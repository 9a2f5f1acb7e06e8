"""Stand-in corpora in the real SUPERB layouts, and the preparation steps the recipes need."""
