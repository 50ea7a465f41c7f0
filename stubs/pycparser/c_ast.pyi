class Coord:
    file: str
    line: int

class Node:
    coord: Coord

class FileAST(Node):
    ext: list[Node]

class IdentifierType(Node):
    names: list[str]

class TypeDecl(Node):
    declname: str | None
    quals: list[str]
    type: Node

class PtrDecl(Node):
    quals: list[str]
    type: Node

class ParamList(Node):
    params: list[Node]

class FuncDecl(Node):
    args: ParamList | None
    type: Node

class Typename(Node):
    name: str | None
    type: Node

class Decl(Node):
    name: str
    type: Node

class Typedef(Node):
    name: str
    type: Node
