package main

import (
	"encoding/json"
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/spf13/cobra"
)

// versionInfo describes this build of vigilctl.
type versionInfo struct {
	Version  string `json:"version"`
	Commit   string `json:"commit,omitempty"`
	Go       string `json:"go"`
	Platform string `json:"platform"`
}

func buildVersion() versionInfo {
	v := versionInfo{Version: version, Go: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" {
				v.Commit = s.Value
			}
		}
	}
	return v
}

func (a *app) newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version of vigilctl",
		Long: `Print the version of this vigilctl build: release version (set at build
time), VCS commit when known, Go version and platform. It contacts no
observer.`,
		Example: `  vigilctl version
  vigilctl version -o json`,
		Args: noArgs,
		RunE: func(*cobra.Command, []string) error {
			v := buildVersion()
			var err error
			if a.output == outputJSON {
				enc := json.NewEncoder(a.stdout)
				enc.SetIndent("", "  ")
				err = enc.Encode(v)
			} else {
				commit := ""
				if v.Commit != "" {
					commit = " commit " + v.Commit
				}
				_, err = fmt.Fprintf(a.stdout, "vigilctl %s%s (%s, %s)\n", v.Version, commit, v.Go, v.Platform)
			}
			if err != nil {
				return &opError{what: "write output", err: err}
			}
			return nil
		},
	}
}
