//! Open files of a task: classify, dump into files.img/fdinfo and friends. (In progress.)
