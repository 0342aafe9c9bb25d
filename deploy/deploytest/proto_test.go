package deploytest

import (
	"io"
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/vigilha/vigil/cluster/clustertest"
)

func TestProto(t *testing.T) {
	c := clustertest.Start(t, clustertest.Options{})
	l := c.WaitForLeader(20 * time.Second)
	time.Sleep(6 * time.Second)
	for i := range c.Nodes {
		resp, err := http.Get("http://" + c.Nodes[i].Obs.HTTPAddr() + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		os.WriteFile("/tmp/scrape"+c.Nodes[i].ID+".txt", b, 0o644)
	}
	t.Log("leader", l, c.Nodes[l].Obs.Controller().Status("pg-main"))
}
