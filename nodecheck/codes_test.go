package nodecheck

import (
	"go/ast"
	"go/parser"
	"go/token"
	"slices"
	"testing"
)

// Every Code constant of the package is in AllCodes: the metrics declare their series from it, so
// a code left out would have no zero series to alert on.
func TestAllCodesListsEveryCode(t *testing.T) {
	f, err := parser.ParseFile(token.NewFileSet(), "nodecheck.go", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	var declared []Code
	for _, d := range f.Decls {
		g, ok := d.(*ast.GenDecl)
		if !ok || g.Tok != token.CONST {
			continue
		}
		for _, s := range g.Specs {
			v := s.(*ast.ValueSpec)
			if id, ok := v.Type.(*ast.Ident); !ok || id.Name != "Code" {
				continue
			}
			for _, n := range v.Names {
				declared = append(declared, Code(n.Name))
			}
		}
	}
	if len(declared) == 0 {
		t.Fatal("no Code constant found in nodecheck.go")
	}
	for _, c := range declared {
		if !slices.Contains(AllCodes(), c) {
			t.Errorf("%s is declared but not in AllCodes", c)
		}
	}
	if len(AllCodes()) != len(declared) {
		t.Errorf("AllCodes has %d codes, nodecheck.go declares %d", len(AllCodes()), len(declared))
	}
}
