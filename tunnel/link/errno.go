package link

import "syscall"

var (
	errConnRefused = syscall.ECONNREFUSED
	errHostUnreach = syscall.EHOSTUNREACH
	errNetUnreach  = syscall.ENETUNREACH
)
