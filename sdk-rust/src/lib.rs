//! Write an mp handler or merger in a few lines, and declare a topology in code.
