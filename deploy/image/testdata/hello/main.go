// Command hello stands in for a daemon in the builder's tests: small, so
// cross-compiling it for every platform is quick, and stamped like the
// daemons with -ldflags -X.
package main

import (
	"fmt"
	"os"
	"runtime"
)

var version = "unstamped"

func main() {
	fmt.Printf("hello %s %s/%s uid=%d gid=%d\n", version, runtime.GOOS, runtime.GOARCH, os.Getuid(), os.Getgid())
}
