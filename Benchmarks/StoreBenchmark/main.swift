print("store benchmark: not yet written")
