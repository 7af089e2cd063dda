print("bus benchmark: not yet written")
