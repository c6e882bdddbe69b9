"""The recipe study (`ki-vla study`): every recipe from one vision-language base, measured over training."""
