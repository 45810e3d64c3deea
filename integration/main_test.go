package integration

import (
	"testing"

	"isthmus.dev/integration/harness"
)

var bins harness.Binaries

func TestMain(m *testing.M) { harness.Main(m, &bins) }
