// Command stamp prints the build information, for buildinfo's test of
// -ldflags stamping.
package main

import (
	"fmt"

	"isthmus.dev/tunnel/buildinfo"
)

func main() { fmt.Println(buildinfo.Get()) }
