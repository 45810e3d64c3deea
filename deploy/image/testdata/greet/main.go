// Command greet is the builder tests' second binary, so the layer holds
// more than one and their order is checked.
package main

import "fmt"

var version = "unstamped"

func main() { fmt.Println("greet", version) }
