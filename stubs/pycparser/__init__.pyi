from . import c_ast as c_ast, c_parser as c_parser
