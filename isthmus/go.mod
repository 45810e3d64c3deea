module isthmus.dev/isthmus

go 1.26.2
