package image

import (
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

func TestValidate(t *testing.T) {
	good := Config{Ref: "localhost/isthmus:v1.2.3", Version: "v1.2.3"}
	if err := good.Validate(); err != nil {
		t.Fatalf("Validate(%+v) = %v, want nil", good, err)
	}
	for _, tc := range []struct {
		name string
		mod  func(*Config)
		want string // in the error: the field at fault
	}{
		{"no ref", func(c *Config) { c.Ref = "" }, "Ref is empty"},
		{"ref without registry", func(c *Config) { c.Ref = "isthmus:v1" }, "Ref: \"isthmus:v1\""},
		{"ref without tag", func(c *Config) { c.Ref = "localhost/isthmus" }, "Ref: \"localhost/isthmus\""},
		{"no version", func(c *Config) { c.Version = "" }, "Version is empty"},
		{"two binaries, one name", func(c *Config) { c.Packages = []string{"a/cmd/x", "b/cmd/x"} }, "would both be /x"},
		{"a binary over /etc", func(c *Config) { c.Packages = []string{"a/etc"} }, "Packages"},
		{"windows", func(c *Config) { c.Platforms = []v1.Platform{{OS: "windows", Architecture: "amd64"}} }, "only linux"},
		{"arm without variant", func(c *Config) { c.Platforms = []v1.Platform{{OS: "linux", Architecture: "arm"}} }, "variant v6 or v7"},
		{"amd64 variant", func(c *Config) { c.Platforms = []v1.Platform{{OS: "linux", Architecture: "amd64", Variant: "v3"}} }, "variant \"v3\""},
		{"unknown arch", func(c *Config) { c.Platforms = []v1.Platform{{OS: "linux", Architecture: "mips"}} }, "architecture \"mips\""},
		{"platform twice", func(c *Config) { c.Platforms = append(DefaultPlatforms(), DefaultPlatforms()[0]) }, "listed twice"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := good
			tc.mod(&c)
			err := c.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Validate() = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestGoEnv(t *testing.T) {
	for _, tc := range []struct {
		p    v1.Platform
		want string
	}{
		{v1.Platform{OS: "linux", Architecture: "amd64"}, "CGO_ENABLED=0 GOOS=linux GOARCH=amd64"},
		{v1.Platform{OS: "linux", Architecture: "arm64"}, "CGO_ENABLED=0 GOOS=linux GOARCH=arm64"},
		{v1.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"}, "CGO_ENABLED=0 GOOS=linux GOARCH=arm64"},
		{v1.Platform{OS: "linux", Architecture: "arm", Variant: "v7"}, "CGO_ENABLED=0 GOOS=linux GOARCH=arm GOARM=7"},
		{v1.Platform{OS: "linux", Architecture: "arm", Variant: "v6"}, "CGO_ENABLED=0 GOOS=linux GOARCH=arm GOARM=6"},
	} {
		env, err := goEnv(tc.p)
		if err != nil || strings.Join(env, " ") != tc.want {
			t.Errorf("goEnv(%s) = %q, %v; want %q", tc.p, env, err, tc.want)
		}
	}
}

func TestDefaults(t *testing.T) {
	c := Config{Ref: "localhost/isthmus:v1", Version: "v1"}.withDefaults()
	if len(c.Packages) != 3 || len(c.Platforms) != 3 || c.Go != "go" || c.Created.Unix() != 0 ||
		c.Revision != "unknown" || c.Source != DefaultSource || c.Log == nil {
		t.Errorf("withDefaults() = %+v", c)
	}
	var names []string
	for _, p := range c.Platforms {
		names = append(names, p.String())
	}
	if got := strings.Join(names, " "); got != "linux/amd64 linux/arm64 linux/arm/v7" {
		t.Errorf("default platforms %s", got)
	}
}
