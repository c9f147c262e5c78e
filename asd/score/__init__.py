"""The scorer interface and grouping, Deep SVDD, decision thresholds (the back ends: asd/backends/)."""
