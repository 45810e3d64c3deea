module isthmus.dev/certs

go 1.26.2
