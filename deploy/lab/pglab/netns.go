package pglab

import "github.com/vigilha/vigil/deploy/lab/netlab"

// inNetNS runs f inside the named network namespace (processes started by
// f inherit it); an empty name runs f as is.
func inNetNS(name string, f func() error) error {
	if name == "" {
		return f()
	}
	return netlab.RunInNetNS(name, f)
}
