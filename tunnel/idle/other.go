//go:build !linux

package idle

import "syscall"

// Supported: only Linux has the epoll set.
const Supported = false

// Wait: only Linux has the epoll set; elsewhere readers stay in Go's
// poller.
func Wait(syscall.RawConn, *bool, func()) (tok uint64, ok bool, err error) { return 0, false, nil }

// Cancel has nothing to take back where Wait always fails.
func Cancel(uint64) bool { return false }

// Waiting is always 0 where Wait always fails.
func Waiting() int { return 0 }
