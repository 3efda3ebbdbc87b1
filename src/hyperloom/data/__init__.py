"""Real datasets and task scenarios: Fashion-MNIST and digits, split, permuted, rotated tasks.

Nothing here downloads data at run time, and importing it imports only torch and numpy.
"""

from .datasets import DATASET_NAMES as DATASET_NAMES
from .datasets import FASHION_MNIST_CLASSES as FASHION_MNIST_CLASSES
from .datasets import FASHION_MNIST_DIR as FASHION_MNIST_DIR
from .datasets import FASHION_MNIST_ENV as FASHION_MNIST_ENV
from .datasets import FASHION_MNIST_FILES as FASHION_MNIST_FILES
from .datasets import Dataset as Dataset
from .datasets import fashion_mnist_available as fashion_mnist_available
from .datasets import load_dataset as load_dataset
from .datasets import load_digits as load_digits
from .datasets import load_fashion_mnist as load_fashion_mnist
from .idx import read_idx as read_idx
from .idx import write_idx as write_idx
from .scenarios import Task as Task
from .scenarios import describe_tasks as describe_tasks
from .scenarios import permuted as permuted
from .scenarios import rotate_images as rotate_images
from .scenarios import rotated as rotated
from .scenarios import split_by_classes as split_by_classes
